"""The training engine, its tasks and run folders; ``fit`` trains any model from Python.

    import customnn.train
    result = customnn.train.fit(MyNet, task="cnn", model_args={"width": 8}, epochs=1, train_samples=512)
    result["run_dir"], result["model"]
"""


def fit(model=None, task: str = "cnn", *, model_args: dict | None = None, quiet: bool = False, **settings) -> dict:
    """Train (or, with ``resume=RUN``, continue) one run of ``task`` and return its figures.

    ``model``: a ``customnn.Module`` class whose ``forward(x, targets=None)`` returns ``(logits,
    loss)``, or ``"FILE.py:CLASS"``, or None for the task's built-in model; ``model_args``: its
    constructor's arguments (the task adds the ones it knows: ``seed``, and for the text task
    ``vocab_size`` and ``block_size``). ``task``: ``"cnn"`` (or ``"mnist"``: MNIST digits) or
    ``"gpt"`` (or ``"text"``); ``settings``: the task's flags as keywords (``epochs=1``,
    ``max_steps=5``, ``preset="tiny"``, ...). Everything the command gives a run, this gives:
    the run folder, checkpoints, exact resume, the time budget, Ctrl-C. Returns the task's
    result dict (``run_dir``, ``model``, ``evals``, ``finished``, ...).
    """
    from customnn.train.fitting import fit as _fit

    return _fit(model, task, model_args=model_args, quiet=quiet, **settings)
