"""predictd reporting: predictions into documents (SR, report text)."""
