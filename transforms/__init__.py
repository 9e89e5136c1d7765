"""Pipeline stages of qdedup: one module per stage, pure logic beside its Beam glue."""
from transforms import garbage

garbage.tune()
