"""predictd models: pure ML (cards, preprocessing, inference); no database, no network."""
