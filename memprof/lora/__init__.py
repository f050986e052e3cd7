"""LoRA knowledge shared by every command: its options and target names (options.py), and what an adapter
trains, counted from the inventory or by peft (count.py). `memprof lora-params` itself is memprof.lora_params."""
