"""The one log channel: format, rank 0 only, third-party noise dropped unless --verbose."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from finetune.log import NOISY_LOGS, configure, quiet_stdout

DEEPSPEED_CPU = ("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
BNB_KERNELS = ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. "
               "Please make sure you already `pip install kernels` and the kernels >= 0.11.1")
CHECKPOINTING = ("`is_gradient_checkpointing` is deprecated and will be removed in v6. "
                 "Use `is_activation_checkpointing` instead.")


@pytest.fixture(autouse=True)
def restore_loggers():
    names = ["finetune", *(name for name, _ in NOISY_LOGS)]
    saved = {name: (list(logging.getLogger(name).handlers), list(logging.getLogger(name).filters),
                    logging.getLogger(name).level) for name in names}
    stdout = sys.stdout
    with warnings.catch_warnings():  # configure(rank=N) ignores every warning: undone with the test
        yield
    sys.stdout = stdout
    logging.disable(logging.NOTSET)
    for name, (handlers, filters, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_notices_and_warnings_print_plainly_on_stderr(capsys) -> None:
    configure(rank=0)
    logging.getLogger("finetune.some.module").info("loading the base model")
    logging.getLogger("finetune.some.module").warning("no chat template saved")
    logging.getLogger("finetune.some.module").debug("details")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["finetune: loading the base model", "warning: no chat template saved"]


def test_verbose_prints_debug_lines(capsys) -> None:
    configure(rank=0, verbose=True)
    logging.getLogger("finetune.x").debug("details")
    assert capsys.readouterr().err == "finetune: details\n"


def test_configuring_twice_prints_each_line_once(capsys) -> None:
    configure(rank=0)
    configure(rank=0)
    logging.getLogger("finetune.x").info("once")
    assert capsys.readouterr().err == "finetune: once\n"


def test_other_ranks_print_only_errors_marked_with_their_rank(capsys) -> None:
    configure(rank=3)
    logger = logging.getLogger("finetune.x")
    logger.info("notice")
    logger.warning("warning")
    logger.error("the data cache is missing")
    assert capsys.readouterr().err == "[rank 3] error: the data cache is missing\n"


@pytest.mark.parametrize(("name", "message"), [("DeepSpeed", DEEPSPEED_CPU),
                                               ("bitsandbytes.backends.cpu.ops", BNB_KERNELS)])
def test_noise_is_dropped_and_verbose_keeps_it(name: str, message: str) -> None:
    seen = Collect()
    noisy = logging.getLogger(name)
    noisy.addHandler(seen)
    configure()
    noisy.warning(message)
    noisy.warning("ZeRO-3 is not supported with this loss")  # anything else still comes through
    assert seen.messages == ["ZeRO-3 is not supported with this loss"]
    configure(verbose=True)
    noisy.warning(message)
    assert seen.messages[-1] == message


def test_checkpointing_future_warning_is_dropped_and_verbose_keeps_it() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure()
        warnings.warn(CHECKPOINTING, FutureWarning, stacklevel=1)
        warnings.warn("`foo` is deprecated", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["`foo` is deprecated"]
        configure(verbose=True)
        warnings.warn(CHECKPOINTING, FutureWarning, stacklevel=1)
        assert str(caught[-1].message) == CHECKPOINTING


def test_deepspeed_import_line_is_dropped_when_configured_first() -> None:
    """DeepSpeed prints the line while it is imported, to stdout, through its own handler."""
    code = "import sys; from finetune.log import configure; configure(verbose=sys.argv[1] == 'v'); import deepspeed"
    loud = subprocess.run([sys.executable, "-c", code, "v"], capture_output=True, text=True, timeout=300)
    if "Setting accelerator to CPU" not in loud.stdout + loud.stderr:
        pytest.skip("deepspeed found an accelerator here; it does not print the CPU line")
    quiet = subprocess.run([sys.executable, "-c", code, "q"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "Setting accelerator" not in quiet.stdout + quiet.stderr


def test_library_progress_bars_are_off_unless_verbose(tiny_llama_dir) -> None:
    """transformers' "Loading weights" bar (read from the environment at import) is gone; --verbose keeps it."""
    import os

    code = ("import sys; from finetune.log import configure; configure(verbose=sys.argv[1] == 'v'); "
            "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(sys.argv[2])")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    runs = {mode: subprocess.run([sys.executable, "-c", code, mode, str(tiny_llama_dir)], capture_output=True,
                                 text=True, timeout=300, env=env) for mode in ("v", "q")}
    assert all(run.returncode == 0 for run in runs.values()), runs["q"].stderr
    assert "Loading weights" in runs["v"].stderr
    assert "Loading weights" not in runs["q"].stderr


def test_other_ranks_print_nothing_but_errors_from_any_library_unless_verbose(capsys, caplog) -> None:
    """DDP's find_unused_parameters UserWarning, the kernels hub's offline notice, a library's print: rank 0's alone."""
    configure(rank=1)
    warnings.warn("find_unused_parameters=True was specified in DDP constructor", UserWarning, stacklevel=1)
    logging.getLogger("kernels._internals.hf_hub").warning("a library warning")
    logging.getLogger("some.library").error("a library error")
    print("[INFO] Running in WANDB offline mode")
    out, err = capsys.readouterr()
    assert out == err == ""
    assert [r.getMessage() for r in caplog.records] == ["a library error"]  # errors still pass
    configure(rank=1, verbose=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("shown with --verbose", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["shown with --verbose"]


def test_rank_0_drops_collective_and_thread_count_warnings_unless_verbose() -> None:
    message = ("`torch.distributed.all_gather_into_tensor` is deprecated. "
               "Please use `torch.distributed.all_gather_single` instead.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure()
        warnings.warn(message, FutureWarning, stacklevel=1)
        warnings.warn(message.replace("all_gather_into_tensor", "reduce_scatter_tensor"), FutureWarning, stacklevel=1)
        warnings.warn("OMP_NUM_THREADS/MKL_NUM_THREADS unset, we set it at 2 to improve oob performance.", UserWarning,
                      stacklevel=1)
        assert caught == []
        configure(verbose=True)
        warnings.warn(message, FutureWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == [message]


def test_quiet_stdout_drops_library_prints_unless_verbose(capsys) -> None:
    logging.getLogger("finetune").handlers.clear()  # as finetune used as a library (earlier tests ran the CLI)
    with quiet_stdout():
        print("unconfigured: a library user sees everything")
    configure()
    with quiet_stdout():
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
    configure(verbose=True)
    with quiet_stdout():
        print("verbose")
    assert capsys.readouterr().out == "unconfigured: a library user sees everything\nverbose\n"
