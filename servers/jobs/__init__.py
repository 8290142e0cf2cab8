"""The pyannoteAI-compatible job API: ``service.setup_jobs(app)`` adds its routes and lifecycle."""
