"""Sequential LoRA: one peft LoRA adapter trained through all tasks; the forgetting reference."""

from moses.methods.lora import LoRAMethod


class SeqLoRAMethod(LoRAMethod):
    name = "seq-lora"
