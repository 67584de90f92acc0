"""Screens: the main screen and the modal/secondary screens pushed over it."""
