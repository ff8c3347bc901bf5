# silhouette_nb — one entry point for setting up, testing and benchmarking.
#   make test       the whole suite (what CI runs)
#   make bench      the speed / memory benchmarks (print ratios, assert nothing)
#   make gpu-check  every GPU path in <= 8 min on one GPU, no venv needed: table + gpu_check.json/.md in $OUT or benchmarks/out/ (one line without CUDA)
#   make gpu-bundle the wheels a GPU machine without network lacks, for PY_VERSION (3.12): .gpu-bundle/cp312/ (< 40 MiB), carry it there
#   make reproduce  the quick experiment suite (CPU, <= 20 min) and its report in results/quick/
#   make study      the full-size study (CPU, 2 cores, <= 2.5 h, resumable) in results/standard/
#   make readme     regenerate README.md from nbs/index.ipynb (offline, no Quarto)
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
ARCH   := $(shell uname -m)
STAMP  := $(VENV)/.installed
# torch/torchvision as served by the local package cache on x86_64; elsewhere pip picks.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export PYTHONUNBUFFERED := 1
export MPLBACKEND := Agg

.PHONY: docs browser data venv test check-clean check-nbdev nbtest pytest bench gpu-check gpu-bundle readme export clean-venv reproduce study

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(ARCH),x86_64)
	$(PY) -m pip install -q $(TORCH_PINS)
endif
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

test: venv data browser check-clean check-nbdev nbtest docs pytest

# A fresh clone is clean; locally, `make test ALLOW_DIRTY=1` skips this one check.
check-clean:
	@if [ -z "$(ALLOW_DIRTY)" ] && [ -n "$$(git status --porcelain)" ]; then \
	  echo "check-clean: the working tree has uncommitted changes:"; git status --porcelain | head -20; exit 1; \
	else echo "check-clean: ok"; fi

# nbdev-clean and nbdev-export must leave notebooks and the library byte-for-byte unchanged.
check-nbdev: venv
	@before=$$(bash tools/tree_hash.sh); $(BIN)/nbdev-clean; after=$$(bash tools/tree_hash.sh); \
	  if [ "$$before" != "$$after" ]; then echo "check-nbdev: nbdev-clean changed files (run nbdev-clean and commit)"; git status --porcelain; exit 1; fi
	@before=$$(bash tools/tree_hash.sh); $(BIN)/nbdev-export; after=$$(bash tools/tree_hash.sh); \
	  if [ "$$before" != "$$after" ]; then echo "check-nbdev: nbdev-export changed files (run nbdev-export and commit)"; git status --porcelain; exit 1; fi
	@echo "check-nbdev: ok"

nbtest: venv
	$(BIN)/nbdev-test --timing

pytest: venv
	$(BIN)/pytest -q

bench: venv
	$(PY) benchmarks/bench_silhouette.py
	$(PY) benchmarks/bench_supcon.py
	$(PY) benchmarks/bench_large_batch.py --threads 1

# Without a venv (a GPU machine): the machine's python3, with the bundle of `gpu-bundle` installed offline by the check.
gpu-check:
	@if [ -x $(PY) ]; then $(PY) tools/gpu_check.py $(GPU_CHECK_ARGS); else $(PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS); fi

PY_VERSION ?= 3.12
gpu-bundle: venv
	$(PY) tools/gpu_bundle.py --python-version $(PY_VERSION)

readme: venv
	$(PY) tools/readme.py

export: venv
	$(BIN)/nbdev-clean && $(BIN)/nbdev-export

clean-venv:
	rm -rf $(VENV)

docs: venv
	$(PY) docs/build.py

# The `quick` suite on the CPU (resumable: re-running skips the runs already recorded), then its report.
# Without Fashion-MNIST (see `data`) its runs are skipped with a message and the rest runs.
reproduce: venv
	@$(MAKE) --no-print-directory data || echo "reproduce: Fashion-MNIST could not be installed; its runs will be skipped"
	@$(BIN)/silhouette-nb suite quick --out results/quick; rc=$$?; \
	  if [ $$rc -ne 130 ]; then $(BIN)/silhouette-nb report results/quick/results.jsonl || rc=1; \
	  echo "reproduce: results in $(CURDIR)/results/quick/: report.md (tables), curves.png (learning curves), top1.png silhouette.png knn.png nmi.png ari.png (plots), results.jsonl (one row per run), runs/ (a folder per run: config, history, models)"; fi; \
	  exit $$rc

# The full-size study: its four suites (`silhouette_nb.config.STUDY`) on STUDY_WORKERS processes of one thread each,
# sharing one results file (each run is claimed by one process; re-running skips what is recorded), then its report,
# and the files of nbs/20_results.ipynb (tools/study_results.py).
STUDY_SUITES  ?= standard standard-corel sensitivity standard-supcon
STUDY_WORKERS ?= 2
STUDY_OUT     ?= results/standard
study: venv data
	@mkdir -p $(STUDY_OUT)
	@for w in $$(seq $(STUDY_WORKERS)); do \
	  ( for s in $(STUDY_SUITES); do $(BIN)/silhouette-nb suite $$s --out $(STUDY_OUT) --threads 1 --save-model last --no-bar || exit $$?; done ) \
	    >> $(STUDY_OUT)/worker$$w.log 2>&1 & \
	done; wait; $(BIN)/silhouette-nb report $(STUDY_OUT)/results.jsonl; \
	echo "study: results in $(CURDIR)/$(STUDY_OUT)/ (results.jsonl, runs/, report.md; each worker's log in worker*.log)"; \
	$(PY) tools/study_results.py --src $(STUDY_OUT)   # -> nbs/results/standard.jsonl and the run files 20_results reads

# Offline real data: Fashion-MNIST from Debian (installed when run as root; the suite runs without it otherwise).
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "data: Fashion-MNIST ok"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; \
	else echo "data: Fashion-MNIST missing and not root: sudo apt-get install dataset-fashion-mnist (tests that need it skip)"; fi

# Chromium + chromedriver for tests/test_docs_browser.py (Debian packages; installed when run as root)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "browser: ok ($$(chromium --version))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "browser: chromium/chromedriver missing and not root: sudo apt-get install -y chromium chromium-driver (the docs browser test skips; it fails under CI=true)"; fi
