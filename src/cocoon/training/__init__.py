"""Training on a worker: LoRA fine-tuning of the model it serves (:mod:`.lora`)."""
