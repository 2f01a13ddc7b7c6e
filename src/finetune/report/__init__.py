"""`finetune report`: every checkpoint measured on your held-out chats (loss, style, replay, leaks)."""
