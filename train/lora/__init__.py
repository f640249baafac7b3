"""Creative LoRAs: reward-guided LoRA training with CREward."""
