"""Shared images: sniffing, de-identification, burned-in text, rendering, storage, watermarks."""
