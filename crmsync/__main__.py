from crmsync.cli import app

app(prog_name="crmsync")
