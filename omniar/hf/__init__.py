from omniar.hf.qwen2 import config_from_qwen2, load_qwen2, save_qwen2

__all__ = ["config_from_qwen2", "load_qwen2", "save_qwen2"]
