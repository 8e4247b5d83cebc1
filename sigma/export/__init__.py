"""Turn a finished batch run into training data: IMDL-BenCo folders + JSON list, COCO JSON with RLE, or a
Hugging Face dataset (parquet with Image() columns + a dataset card)."""
from sigma.export.coco import export_coco
from sigma.export.hf import export_hf
from sigma.export.imdl_benco import export_imdl_benco
from sigma.export.select import RowFilter, iter_rows, load_rows

__all__ = ["RowFilter", "export_coco", "export_hf", "export_imdl_benco", "iter_rows", "load_rows"]
