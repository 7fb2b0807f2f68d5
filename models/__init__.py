"""Model preparation: export Keras / SavedModel models with serialized-tf.Example signatures."""
