"""The tests' small training runs: a few hundred Fashion-MNIST images, a quarter-width
model, fp32, a step schedule (whose learning rate at a step does not depend on the
planned length, so a resumed or stopped run can be compared with a straight one)."""


def tiny_train_argv(fashion_dir: str, train: int, val: int, *extra: object) -> list:
    """`alexnet train` arguments for such a run; `extra` adds or overrides options."""
    base = ["train", "--data-dir", fashion_dir, "--limit-train", str(train), "--limit-val", str(val)]
    return [*base, "--width", "0.25", "--amp", "off", "--schedule", "step", *extra]
