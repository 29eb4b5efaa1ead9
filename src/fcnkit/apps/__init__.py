"""Programs built from the layers below: the demo (:mod:`.demo`) and speed measurement (:mod:`.benchmark`).
Layer: above engine, below cli; nothing here parses command lines."""
