"""Everything that touches paths and stores: image readers, label writers, model files."""
