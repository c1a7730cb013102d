"""Model building blocks; every kernel call goes through the selected platform."""
