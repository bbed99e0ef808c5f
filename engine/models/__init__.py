"""Models and what runs them: model references and safe loading, the pipeline cache, running a
batch, image codecs, step callbacks, the draft tier, prompt blends, upscalers and video pipelines.

Importing this package imports no torch; the modules that need it import it where they run."""
