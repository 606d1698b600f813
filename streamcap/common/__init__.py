"""What every service is made of: typed settings, the typer commands built from them,
logging, the W&B mode, and child processes that die with their parent."""
