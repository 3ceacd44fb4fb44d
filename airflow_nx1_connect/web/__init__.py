"""Web adapters: Flask blueprint, FAB admin view, FastAPI app. Imported only when served."""
