"""Pictures of per-token rewards from scored rows (``avalign.evaluation.scoring``): a self-contained HTML page
(no network: inline CSS and JS) and a PNG heatmap for papers.

Each response is drawn token by token, coloured by its token reward on a diverging scale centred at 0 (red below,
blue above; the scale's end is the 98th percentile of |reward| over the drawn tokens, beyond it colours saturate).
On the page, hovering a token shows its reward and, for AVA models, mu, sigma and w; preference rows put chosen and
rejected side by side; rows sort by score or by margin; a switch colours by mu or by sigma (purple) instead.
"""

from __future__ import annotations

import html

import numpy as np

from ..errors import ConfigError

NEGATIVE, POSITIVE, NEUTRAL = (202, 0, 32), (5, 113, 176), (247, 247, 247)  # ColorBrewer RdBu ends and middle
SIGMA_HIGH = (117, 107, 177)  # ColorBrewer Purples: sigma is one-sided


def _responses(row: dict) -> list[tuple[str, str]]:
    """(label, field prefix) of the scored responses of a row."""
    if "chosen_score" in row:
        return [("chosen", "chosen_"), ("rejected", "rejected_")]
    return [("completion", "")]


def _prompt_text(row: dict) -> str:
    prompt = row.get("prompt", "")
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def reward_scale(rows: list[dict], key: str = "token_rewards", quantile: float = 98.0) -> float:
    """The value drawn at full colour: the given percentile of |value| over every drawn token (1 if none)."""
    values = [abs(v) for row in rows for _, prefix in _responses(row) for v in row.get(prefix + key) or ()]
    scale = float(np.percentile(values, quantile)) if values else 0.0
    return scale if scale > 0 else 1.0


def _mix(low: tuple, high: tuple, t: float) -> tuple[int, ...]:
    return tuple(round(a + (b - a) * t) for a, b in zip(low, high))


def diverging_colour(value: float, scale: float) -> tuple[int, ...]:
    t = max(-1.0, min(1.0, value / scale))
    return _mix(NEUTRAL, POSITIVE if t > 0 else NEGATIVE, abs(t))


def _css(rgb: tuple[int, ...]) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def _ink(rgb: tuple[int, ...]) -> str:
    """Dark text on light backgrounds, white on dark ones (relative luminance)."""
    return "#fff" if 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] < 140 else "#111"


def _token_label(token: str) -> str:
    return token.replace("\n", "\u21b5\n").replace("\t", "\u2192")


# The colourings a page offers: (key in the data attributes, field, name in the legend, one-sided).
LAYERS = (("r", "token_rewards", "token reward (w\u00b7mu)", False), ("m", "token_mean", "mu (reward mean)", False),
          ("s", "token_std", "sigma (reward uncertainty)", True))


def layer_colour(value: float, scale: float, one_sided: bool) -> tuple[int, ...]:
    if one_sided:
        return _mix(NEUTRAL, SIGMA_HIGH, min(1.0, max(0.0, value / scale)))
    return diverging_colour(value, scale)


def _tokens_html(row: dict, prefix: str, scales: dict[str, float]) -> str:
    tokens, rewards = row[prefix + "tokens"], row.get(prefix + "token_rewards")
    mean, std, weight = (row.get(prefix + key) for key in ("token_mean", "token_std", "token_weight"))
    spans = []
    for t, token in enumerate(tokens):
        attrs, tip = [], [f"token {t + 1}: {token!r}"]
        if rewards is not None:
            tip.append(f"reward {rewards[t]:+.4g}")
        if std is not None:
            tip.append(f"mu {mean[t]:+.4g}  sigma {std[t]:.4g}  w {weight[t]:.4g}")
        for key, field, _, one_sided in LAYERS:
            values = row.get(prefix + field)
            if values is None:
                continue
            colour = layer_colour(values[t], scales[key], one_sided)
            if not attrs:  # the first layer is what the page shows before any choice
                attrs.append(f'style="background:{_css(colour)};color:{_ink(colour)}"')
            attrs.append(f'data-{key}="{_css(colour)}" data-{key}i="{_ink(colour)}"')
        spans.append(f'<span class="tok" {" ".join(attrs)} title="{html.escape(chr(10).join(tip))}">'
                     f"{html.escape(_token_label(token))}</span>")
    return "".join(spans)


def _response_html(row: dict, label: str, prefix: str, scales: dict[str, float]) -> str:
    return (f'<div class="resp {label}"><div class="head"><span class="label">{label}</span>'
            f'<span class="score">score {row[prefix + "score"]:+.3f}</span></div>'
            f'<div class="text">{_tokens_html(row, prefix, scales)}</div></div>')


def _row_html(index: int, row: dict, scales: dict[str, float]) -> str:
    responses = _responses(row)
    score = row[responses[0][1] + "score"]
    margin = score - row["rejected_score"] if len(responses) == 2 else score
    prompt = _prompt_text(row)
    body = "".join(_response_html(row, label, prefix, scales) for label, prefix in responses)
    return (f'<section class="row" data-index="{index}" data-score="{score:.6g}" data-margin="{margin:.6g}">'
            f'<div class="meta">#{index + 1}</div>'
            + (f'<div class="prompt" title="the prompt">{html.escape(prompt)}</div>' if prompt else "")
            + f'<div class="pair n{len(responses)}">{body}</div></section>')


def _legend(key: str, name: str, scale: float, one_sided: bool, shown: bool) -> str:
    low = 0.0 if one_sided else -scale
    stops = ", ".join(_css(layer_colour(v, scale, one_sided)) for v in np.linspace(low, scale, 9))
    return (f'<div class="legend" id="legend-{key}"{"" if shown else " hidden"}><span>{low:+.2f}</span>'
            f'<div class="bar" style="background:linear-gradient(90deg, {stops})"></div><span>{scale:+.2f}</span>'
            f'<span class="note">{html.escape(name)}{"" if one_sided else "; 0 is white"}</span></div>')


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:10px 20px;z-index:2;
 display:flex;flex-wrap:wrap;gap:14px 28px;align-items:center}
h1{font-size:16px;margin:0;font-weight:600}
.legend{display:flex;align-items:center;gap:6px;font-size:12px;font-variant-numeric:tabular-nums}
.legend .bar{width:180px;height:12px;border:1px solid #ccc;border-radius:2px}
.legend .note{color:#666}
label{font-size:12px;color:#444}
main{padding:12px 20px;max-width:1400px}
.row{background:#fff;border:1px solid #e2e2e2;border-radius:6px;margin:0 0 12px;padding:8px 12px}
.meta{font-size:11px;color:#888;float:right}
.prompt{color:#555;font-size:13px;white-space:pre-wrap;border-left:3px solid #ddd;padding-left:8px;margin-bottom:6px;
 max-height:6.5em;overflow:auto}
.pair{display:grid;gap:12px}
.pair.n2{grid-template-columns:1fr 1fr}
.head{display:flex;justify-content:space-between;font-size:12px;color:#555;margin-bottom:2px}
.label{font-weight:600;text-transform:uppercase;letter-spacing:.04em}
.chosen .label{color:#05508a}.rejected .label{color:#8a0016}
.score{font-variant-numeric:tabular-nums}
.text{font:13px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}
.tok{border-radius:2px;padding:1px 0;box-shadow:inset -1px 0 0 rgba(0,0,0,.18)}
.tok:hover{outline:2px solid #222;position:relative;z-index:1}
#info{font:12px ui-monospace,monospace;color:#333;min-width:26em}
[hidden]{display:none!important}
"""

_SCRIPT = """
(function(){
  var main=document.querySelector('main'), rows=[].slice.call(main.querySelectorAll('.row'));
  document.getElementById('sort').addEventListener('change',function(e){
    var how=e.target.value, key=how.split('-')[0], sign=how.endsWith('asc')?1:-1;
    rows.slice().sort(function(a,b){
      if(key==='file') return a.dataset.index-b.dataset.index;
      return sign*(parseFloat(a.dataset[key])-parseFloat(b.dataset[key]));
    }).forEach(function(r){main.appendChild(r);});
  });
  var colour=document.getElementById('colour');
  if(colour) colour.addEventListener('change',function(e){
    var by=e.target.value;
    main.querySelectorAll('.tok').forEach(function(t){
      if(t.dataset[by]){t.style.background=t.dataset[by];t.style.color=t.dataset[by+'i'];}
    });
    document.querySelectorAll('.legend').forEach(function(l){l.hidden=l.id!=='legend-'+by;});
  });
  var info=document.getElementById('info');
  main.addEventListener('mouseover',function(e){
    if(e.target.classList.contains('tok')) info.textContent=e.target.title.replace(/\\n/g,'  |  ');
  });
})();
"""


def write_html(path: str, rows: list[dict], title: str = "avalign token rewards") -> None:
    """Write the page for scored rows (the output rows of ``scored_rows``)."""
    layers = [(key, field, name, one_sided) for key, field, name, one_sided in LAYERS
              if any(row.get(prefix + field) for row in rows for _, prefix in _responses(row))]
    if layers and not any(key == "m" for key, *_ in layers):  # a Bradley-Terry model's prefix differences
        layers[0] = ("r", "token_rewards", "token reward: r(y\u2264t) \u2212 r(y<t)", False)
    scales = {key: reward_scale(rows, field) for key, field, _, _ in layers}
    pairs = any("chosen_score" in row for row in rows)
    options = [("file", "file order"), ("score-desc", "score, high first"), ("score-asc", "score, low first")]
    if pairs:
        options += [("margin-desc", "margin (chosen - rejected), high first"), ("margin-asc", "margin, low first")]
    sort = "".join(f'<option value="{value}">{text}</option>' for value, text in options)
    colour = ""
    if len(layers) > 1:
        choices = "".join(f'<option value="{key}">{html.escape(name)}</option>' for key, _, name, _ in layers)
        colour = f'<label>colour by <select id="colour">{choices}</select></label>'
    legends = "".join(_legend(key, name, scales[key], one_sided, i == 0) for i, (key, _, name, one_sided) in enumerate(layers))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f'<header><h1>{html.escape(title)}</h1>{legends}'
        f'<label>sort <select id="sort">{sort}</select></label>{colour}<div id="info">hover a token</div></header>',
        "<main>", *(_row_html(i, row, scales) for i, row in enumerate(rows)), "</main>",
        f"<script>{_SCRIPT}</script>", "</body></html>",
    ]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts))


def write_png(path: str, rows: list[dict], title: str = "avalign token rewards", max_responses: int = 8,
              line_chars: int = 90, field: str = "token_rewards") -> None:
    """A heatmap of the first ``max_responses`` responses: tokens in reading order, wrapped at ``line_chars``
    characters, each cell coloured by ``field`` (token_rewards, or an AVA model's token_mean or token_std) on the
    page's scales; a colour bar below."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LinearSegmentedColormap, Normalize
        from matplotlib.patches import Rectangle
    except ImportError as exc:
        raise ConfigError("--png needs matplotlib: pip install matplotlib") from exc
    layer = next((layer for layer in LAYERS if layer[1] == field), None)
    if layer is None:
        raise ConfigError(f"unknown field '{field}'; expected one of {[layer[1] for layer in LAYERS]}")
    _, _, name, one_sided = layer
    scale = reward_scale(rows, field)
    ends = (NEUTRAL, SIGMA_HIGH) if one_sided else (NEGATIVE, NEUTRAL, POSITIVE)
    cmap = LinearSegmentedColormap.from_list(field, [tuple(c / 255 for c in rgb) for rgb in ends])
    low = 0.0 if one_sided else -scale
    blocks = []  # (label, [(x, line, width, token, reward)], lines)
    for index, row in enumerate(rows):
        for label, prefix in _responses(row):
            if len(blocks) == max_responses:
                break
            cells, x, line = [], 0, 0
            rewards = row.get(prefix + field) or [0.0] * len(row[prefix + "tokens"])
            for token, reward in zip(row[prefix + "tokens"], rewards):
                text = token.replace("\n", "\u21b5")
                width = max(len(text), 1)
                if x + width > line_chars and x > 0:
                    x, line = 0, line + 1
                cells.append((x, line, width, text, reward))
                x += width
            blocks.append((f"#{index + 1} {label}  score {row[prefix + 'score']:+.2f}", cells, line + 1))
    used = max((x + width for _, cells, _ in blocks for x, _, width, _, _ in cells), default=1)
    height = sum(lines + 1.5 for _, _, lines in blocks)  # in token rows; 0.26 inch each, 1 inch for title and bar
    figure = plt.figure(figsize=(max(used * 0.1 + 0.4, 5.0), 0.26 * height + 1.0))
    inches = 0.26 * height + 1.0
    axes = figure.add_axes((0.02, 0.65 / inches, 0.96, 1 - 0.95 / inches))
    y = 0.0
    for label, cells, lines in blocks:
        axes.text(0, y + 0.5, label, fontsize=8.5, fontweight="bold", va="center", color="#333")
        y += 1.0
        for x, line, width, text, reward in cells:
            colour = cmap(max(0.0, min(1.0, (reward - low) / (scale - low))))
            axes.add_patch(Rectangle((x, y + line), width, 0.9, facecolor=colour, edgecolor="white", linewidth=0.6))
            luminance = 0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]
            axes.text(x + width / 2, y + line + 0.47, text, fontsize=7.5, family="monospace", ha="center",
                      va="center", color="white" if luminance < 0.55 else "#111")
        y += lines + 0.5
    axes.set_xlim(-0.2, max(used, 30) + 0.2)
    axes.set_ylim(y, -0.2)
    axes.axis("off")
    axes.set_title(title, fontsize=9, loc="left")
    bar = figure.add_axes((0.3, 0.3 / inches, 0.4, 0.12 / inches))
    figure.colorbar(plt.cm.ScalarMappable(Normalize(low, scale), cmap), cax=bar, orientation="horizontal")
    bar.tick_params(labelsize=7)
    bar.set_title(name, fontsize=7.5, pad=2)
    figure.savefig(path, dpi=150)
    plt.close(figure)
