from boothsync.cli import app

app()
