"""fedtune: federated LoRA fine-tuning for institutions that cannot pool their data.

The console script `fedtune` lives in `fedtune.cli`; the one-site API is `from fedtune import
FineTuner` (see docs/training.md). FineTuner is imported lazily, so `import fedtune` stays light."""

__version__ = "0.1.0"
__all__ = ["FineTuner"]


def __getattr__(name: str):
    if name == "FineTuner":
        from fedtune.finetuner import FineTuner

        return FineTuner
    raise AttributeError(f"module 'fedtune' has no attribute {name!r}")
