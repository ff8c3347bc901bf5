# silhouette_nb — one entry point for setting up, testing and benchmarking.
#   make test       the whole suite (what CI runs)
#   make bench      the speed / memory benchmarks, the objectives' training steps included (print ratios, assert nothing)
#   make gpu-check  every GPU path in <= 8 min on one GPU, no venv needed: table + gpu_check.json/.md in $OUT or benchmarks/out/ (one line without CUDA)
#   make gpu-bundle the wheels a GPU machine without network lacks, for PY_VERSION (3.12): .gpu-bundle/cp312/ (< 40 MiB), carry it there
#   make reproduce  the quick experiment suite (CPU; 3-8 min measured on 2 cores, sized for <= 20) and its report in
#                   results/quick/; exits non-zero, saying how many runs are missing, unless every run is recorded
#   make study      the full-size study (CPU, 2 cores: 1.3 h of wall time measured, resumable) in results/standard/
#   make evidence   the evidence suites: data-scarce regime, the term's variants, unseen classes (CPU, 2 workers: 1.2 h of
#                   wall time measured, resumable) in results/evidence/
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

.PHONY: evidence docs browser data venv test check-clean check-nbdev nbtest pytest bench gpu-check gpu-bundle readme export clean-venv reproduce study

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
	$(PY) benchmarks/bench_objectives.py --out benchmarks/out/objectives.json

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
# Without Fashion-MNIST (see `data`) its runs are skipped with a message and the rest runs; the report shows what ran,
# and the last line says how many of the suite's runs are missing (exit status 1) - never a silent success.
# QUICK_ARGS narrows or changes the suite (e.g. QUICK_ARGS="--datasets digits"), QUICK_OUT moves it.
QUICK_OUT  ?= results/quick
QUICK_ARGS ?=
reproduce: venv
	@$(MAKE) --no-print-directory data || echo "reproduce: Fashion-MNIST could not be installed (see above); its runs will be skipped"
	@$(BIN)/silhouette-nb suite quick --out $(QUICK_OUT) $(QUICK_ARGS); rc=$$?; \
	  if [ $$rc -ne 130 ]; then $(BIN)/silhouette-nb report $(QUICK_OUT)/results.jsonl || rc=1; \
	  echo "reproduce: results in $(abspath $(QUICK_OUT))/: report.md (tables), curves.png (learning curves), top1.png silhouette.png knn.png nmi.png ari.png (plots), results.jsonl (one row per run), runs/ (a folder per run: config, history, models)"; \
	  count=$$($(BIN)/silhouette-nb suite quick --out $(QUICK_OUT) $(QUICK_ARGS) --dry-run | tail -1); \
	  total=$$(echo "$$count" | sed -n 's/^\([0-9]*\) runs; .*/\1/p'); have=$$(echo "$$count" | sed -n 's/^[0-9]* runs; \([0-9]*\) of them .*/\1/p'); \
	  if [ -z "$$total" ] || [ -z "$$have" ]; then echo "reproduce: FAILED: could not count the recorded runs ($$count)"; rc=1; \
	  elif [ "$$have" -lt "$$total" ]; then echo "reproduce: FAILED: $$((total - have)) of the $$total runs of the quick suite are missing from $(QUICK_OUT)/results.jsonl (see the messages above; make reproduce runs only those again)"; rc=1; \
	  else echo "reproduce: all $$total runs of the quick suite recorded"; fi; fi; \
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

# apt-get waits up to APT_WAIT seconds for another apt or dpkg (unattended upgrades, a second `make`) to let go of its
# lock instead of giving up at once: `install` by apt's own option, `update` by retrying (apt 2.6 does not apply that
# option to the lock of its package lists).
APT_WAIT   ?= 900
APT_GET    := DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=$(APT_WAIT)
APT_UPDATE  = t0=$$(date +%s); until out=$$($(APT_GET) update 2>&1); do \
	  case "$$out" in *"Could not get lock"*) ;; *) echo "$$out"; exit 1;; esac; \
	  if [ $$(( $$(date +%s) - t0 )) -ge $(APT_WAIT) ]; then echo "$$out"; exit 1; fi; \
	  [ -n "$$said" ] || echo "$@: apt is busy (another apt or dpkg holds its lock): waiting up to $(APT_WAIT) s"; said=1; sleep 2; \
	done; echo "$$out" | tail -1

# Offline real data: Fashion-MNIST from Debian (installed when run as root; the suite runs without it otherwise).
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
data:
	@if [ -d $(FMNIST_DIR) ]; then echo "data: Fashion-MNIST ok"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then $(APT_UPDATE) && $(APT_GET) install -y dataset-fashion-mnist; \
	else echo "data: Fashion-MNIST missing and not root: sudo apt-get install dataset-fashion-mnist (tests that need it skip)"; fi

# Chromium + chromedriver for tests/test_docs_browser.py (Debian packages; installed when run as root)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "browser: ok ($$(chromium --version))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then $(APT_UPDATE) && $(APT_GET) install -y chromium chromium-driver; \
	else echo "browser: chromium/chromedriver missing and not root: sudo apt-get install -y chromium chromium-driver (the docs browser test skips; it fails under CI=true)"; fi

# The evidence suites (`silhouette_nb.config.EVIDENCE`): like `study`, on EVIDENCE_WORKERS one-thread processes sharing one
# results file. Resumable, also from another machine: a missing results file starts from the committed rows
# (nbs/results/evidence.jsonl), so only the runs not yet committed are run. Ends with the files 20_results reads.
EVIDENCE_SUITES  ?= scarce ablation ablation-variants unseen unseen-mnist1d
EVIDENCE_WORKERS ?= 2
EVIDENCE_OUT     ?= results/evidence
evidence: venv data
	@mkdir -p $(EVIDENCE_OUT)
	@if [ ! -s $(EVIDENCE_OUT)/results.jsonl ] && [ -s nbs/results/evidence.jsonl ]; then cp nbs/results/evidence.jsonl $(EVIDENCE_OUT)/results.jsonl; fi
	@for w in $$(seq $(EVIDENCE_WORKERS)); do \
	  ( for s in $(EVIDENCE_SUITES); do $(BIN)/silhouette-nb suite $$s --out $(EVIDENCE_OUT) --threads 1 --save-model none --no-bar || exit $$?; done ) \
	    >> $(EVIDENCE_OUT)/worker$$w.log 2>&1 & \
	done; wait; \
	$(PY) tools/study_results.py --src $(EVIDENCE_OUT) --name evidence --no-models   # -> nbs/results/evidence.jsonl and the histories 20_results reads
