"""The text side: WordPiece tokenizer, vocabulary building, caption cutting. No torch."""
