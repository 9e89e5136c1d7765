"""Pipeline stages of qdedup: one module per stage, pure logic beside its Beam glue."""
from transforms import garbage, openmp

garbage.tune()
openmp.tune()  # before any module loads torch or faiss, whose OpenMP reads it once
