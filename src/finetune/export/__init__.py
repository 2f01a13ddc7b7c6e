"""`finetune export`: the trained model as files other inference engines load (GGUF for llama.cpp and Ollama)."""
