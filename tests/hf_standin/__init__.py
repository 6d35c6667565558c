"""A local stand-in of the Hugging Face Hub file API (server.py), for the real client."""
