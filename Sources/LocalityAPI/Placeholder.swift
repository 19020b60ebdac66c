enum _PlaceholderLocalityAPI {}
