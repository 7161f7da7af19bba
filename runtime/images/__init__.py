"""Images in: read with size caps, decode, preprocess as the manifest says, prefetch ahead of inference."""
