"""The review page's HTML: everything inline (CSS, script, base64 thumbnails), nothing fetched.

The gallery is rendered here, not by the script, so the page reads the same with scripts off; the
script only filters and sorts the `figure.item` elements by their data attributes.
"""
from __future__ import annotations

import math
from html import escape
from typing import Any

from sigma.text import dumps_finite, printable

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
#run{max-width:100%} #run td{word-break:break-all}
#controls{position:sticky;top:0;background:#fafafa;padding:8px 0;border-bottom:1px solid #ddd;z-index:1}
#controls label{margin-right:14px}
#gallery{display:flex;flex-wrap:wrap;gap:10px;margin-top:10px}
figure.item{margin:0;background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px;width:400px}
figure.item .imgs{display:flex;gap:4px} figure.item img{width:194px;height:auto;background:#eee}
figcaption{font-size:12px;margin-top:4px;word-break:break-word}
.conf{font-weight:600} .low{color:#b00} .meta{color:#666}
.noimg{width:194px;height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
"""

SCRIPT = """
(function(){
  const items = Array.from(document.querySelectorAll('#gallery figure.item'));
  const gallery = document.getElementById('gallery');
  const q = document.getElementById('q'), type = document.getElementById('type'),
        subset = document.getElementById('subset'), minc = document.getElementById('minconf'),
        sort = document.getElementById('sort'), count = document.getElementById('count');
  function num(el, key, missing){ const v = el.dataset[key]; return v === '' ? missing : parseFloat(v); }
  function apply(){
    const text = q.value.toLowerCase(), t = type.value, s = subset.value, m = parseFloat(minc.value || '0');
    const [key, dir] = sort.value.split(':');
    const missing = dir === 'asc' ? Infinity : -Infinity;
    items.sort((a, b) => dir === 'asc' ? num(a, key, missing) - num(b, key, missing)
                                       : num(b, key, missing) - num(a, key, missing));
    let shown = 0;
    for (const el of items) {
      const conf = num(el, 'confidence', NaN);
      const ok = (!text || el.dataset.text.includes(text)) && (!t || el.dataset.editType === t) &&
                 (!s || el.dataset.subset === s) && (!(m > 0) || (!isNaN(conf) && conf >= m));
      el.style.display = ok ? '' : 'none';
      if (ok) shown++;
      gallery.appendChild(el);
    }
    count.textContent = shown + ' of ' + items.length + ' shown';
    // the view as applied, beside the count: what a link's parameters became (a screenshot or a test reads it)
    Object.assign(document.body.dataset, {shown: String(shown), sort: sort.value, type: t, set: s,
                                          minconf: minc.value});
  }
  [q, type, subset, minc, sort].forEach(el => el.addEventListener('input', apply));
  // a link can carry a view: report.html?type=remove&minconf=0.5&sort=area:desc
  const params = new URLSearchParams(location.search);
  // A value the control does not hold (`sort=` of an order this page lacks: a typo, `f1:asc` from a run with ground
  // truth; a set or edit type of another run; `minconf=abc`) left a select with nothing selected, an empty dropdown
  // (the sort then compared `undefined` keys), or the number field empty: the control keeps its default, shown.
  for (const [key, el] of [['q', q], ['type', type], ['set', subset], ['minconf', minc], ['sort', sort]]) {
    if (!params.has(key)) continue;
    const before = el.value, wanted = params.get(key);
    el.value = wanted;
    if (el.tagName === 'SELECT' ? el.selectedIndex < 0 : el.value === '' && wanted !== '') el.value = before;
  }
  apply();
})();
"""


def _text(value: Any) -> str:
    """A name or text the page shows (a pair id, an instruction, a file or set name, a reason): HTML-escaped, with its
    control characters, line breaks and invisible format characters shown as `repr` writes them (`printable`: `\\n`,
    `\\u202e`). A file name holding U+202E (right-to-left override) showed reversed on the page (`gpj.exe` for
    `exe.jpg`), a NUL or an ESC as nothing at all. Attribute values (the filters' keys) stay as they are."""
    return escape(printable(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _text(value)


def _attr(value: Any) -> str:
    return "" if value is None else escape(str(value), quote=True)


def _figure(item: dict[str, Any]) -> str:
    conf = item["confidence"]
    imgs = item.get("images")
    if imgs:
        pics = (f'<img alt="original" src="{imgs["original"]}"><img alt="edited with mask" src="{imgs["overlay"]}">')
    else:
        pics = '<div class="noimg">image not re-readable</div>'
    text = " ".join(str(item.get(k) or "") for k in ("pair_id", "instruction", "source")).lower()
    gt = f' · F1 {_fmt(item["gt_f1"])} IoU {_fmt(item["gt_iou"])}' if item.get("gt_f1") is not None else ""
    low = " low" if conf is not None and conf < 0.5 else ""
    if item.get("mask_source"):   # which of the two masks the overlay shows
        gt += " · " + ("footprint (composite)" if item["mask_source"] == "footprint" else
                       "semantic" + (" (composite)" if item.get("is_composite") else ""))
    return (
        f'<figure class="item" data-confidence="{_attr(conf)}" data-area="{_attr(item["area_fraction"])}" '
        f'data-f1="{_attr(item.get("gt_f1"))}" data-edit-type="{_attr(item["edit_type"])}" '
        f'data-subset="{_attr(item["subset"])}" data-text="{_attr(text)}">'
        f'<div class="imgs">{pics}</div><figcaption><b>{_text(item["pair_id"])}</b><br>'
        f'<span class="conf{low}">confidence {_fmt(conf)}</span> · area {_fmt(item["area_fraction"] * 100, 1)}% · '
        f'{_text(item["edit_type"] or "edit type ?")}{gt}<br>'
        f'<i>{_text(item["instruction"] or "(no instruction)")}</i><br>'
        f'<span class="meta">{_text(item["source"] or "")}</span></figcaption></figure>')


def _options(values: list[str]) -> str:
    return "".join(f'<option value="{_attr(v)}">{_text(v)}</option>' for v in values)


def render_page(title: str, run: dict[str, Any], metrics: dict[str, dict[str, Any]], items: list[dict[str, Any]],
                errors: list[dict[str, Any]]) -> str:
    run_rows = ("<tr>" + "".join(f"<th>{_text(k)}</th>" for k in run) + "</tr><tr>"
                + "".join(f"<td>{_fmt(v)}</td>" for v in run.values()) + "</tr>")
    metric_html = ""
    if metrics:
        cols = ["pairs", "manipulated", "f1", "iou", "auc", "pooled_f1", "ciou", "giou"]
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join(f"<tr><td>{_text(name)}</td>" + "".join(f"<td>{_fmt(m[c])}</td>" for c in cols) + "</tr>"
                       for name, m in metrics.items())
        metric_html = (f'<h2>Metrics against the corpus ground truth</h2><table id="metrics"><tr><th>set</th>{head}'
                       f"</tr>{body}</table>")
    types = sorted({i["edit_type"] for i in items if i["edit_type"]})
    subsets = sorted({i["subset"] for i in items if i["subset"]})
    error_html = ""
    if errors:
        body = "".join(f"<tr><td>{_text(e['pair_id'])}</td><td>{_text(e['error_code'] or '')}</td>"
                       f"<td style='text-align:left'>{_text(e['error'] or '')}</td></tr>" for e in errors)
        error_html = (f'<h2>Bad pairs ({len(errors)} listed)</h2><table id="errors"><tr><th>pair</th><th>code</th>'
                      f"<th>reason</th></tr>{body}</table>")
    has_f1 = any(i.get("gt_f1") is not None for i in items)
    sort_opts = [("confidence:asc", "confidence, lowest first"), ("confidence:desc", "confidence, highest first"),
                 ("area:desc", "mask area, largest first"), ("area:asc", "mask area, smallest first")]
    if has_f1:
        sort_opts.append(("f1:asc", "F1 vs ground truth, lowest first"))
    sort_html = "".join(f'<option value="{v}">{escape(label)}</option>' for v, label in sort_opts)
    # strict JSON (NaN -> null: a one-pair set has no rho), for whoever reads the page's data block. Every `<`, `>`
    # and `&` is a JSON escape (they occur only inside strings): escaping `</` alone let a corpus path or set name
    # holding `<!--<script>` put the block into HTML's "double escaped" state, where the page's own `</script>`
    # no longer ended it and the filter script after it became part of the data (the page's filters dead)
    data = (dumps_finite({"run": run, "metrics": metrics}, default=str)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_text(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body data-shown="{len(items)}">
<h1>{_text(title)}</h1>
<table id="run">{run_rows}</table>
{metric_html}
<h2>Gallery (mask overlaid in red on the edited image; original on the left)</h2>
<div id="controls">
<label>search <input id="q" type="search" placeholder="pair id, instruction, source"></label>
<label>edit type <select id="type"><option value="">all</option>{_options(types)}</select></label>
<label>set <select id="subset"><option value="">all</option>{_options(subsets)}</select></label>
<label>min confidence <input id="minconf" type="number" min="0" max="1" step="0.05" value="0"></label>
<label>sort <select id="sort">{sort_html}</select></label>
<span id="count">{len(items)} shown</span>
</div>
<div id="gallery">{''.join(_figure(i) for i in items)}</div>
{error_html}
<script type="application/json" id="data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""
