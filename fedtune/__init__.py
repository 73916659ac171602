"""fedtune: federated LoRA fine-tuning for institutions that cannot pool their data.

The console script `fedtune` lives in `fedtune.cli`; the one-site API is `from fedtune import
FineTuner` (see README)."""

__version__ = "0.1.0"
