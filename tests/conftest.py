"Fixtures shared by the test files."
import pytest
import torch


@pytest.fixture(scope='module')
def one_thread():
    "The models are tiny: one thread is faster, and much faster on a shared machine."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def restore_threads():
    "`main` sets torch's thread count of this process (1 on the CPU): give the other test files theirs back."
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
