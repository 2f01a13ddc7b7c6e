"""The tiny local Llama (real Llama 3 tokenizer, random weights) that the quickstart and the tests use."""
