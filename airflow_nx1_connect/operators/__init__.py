"""Rule operators (filled in by the operators issue)."""
