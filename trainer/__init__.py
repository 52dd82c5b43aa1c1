"""A thin JAX trainer for flanpipe splits: trainer.train.train, trainer.evaluate.evaluate, trainer.prompt_tuning."""
