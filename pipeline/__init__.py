"""sareo: reproducible co-registered SAR/EO patch datasets with OpenStreetMap land-cover labels."""

__version__ = "0.1.0"
