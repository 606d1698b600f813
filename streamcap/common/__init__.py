"""What every service is made of: typed settings, the typer commands built from them,
logging, and the W&B mode."""
