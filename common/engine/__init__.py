"""Training and evaluation engines shared by centralised runs and every federated site."""
