"""tfedge.converters: Keras / SavedModel to TFLite (int8, int16x8, float16, dynamic, float32)."""
