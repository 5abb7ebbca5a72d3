"""Studies that compare objectives side by side: `avalign experiment <name> --config file.yaml` (presets in the
repository's top-level experiments/ folder)."""


def pyplot(out):
    """matplotlib's pyplot (Agg backend) to draw a study's plots into ``out``; None, with a message, when matplotlib
    (a dev extra) is not installed: the results are written by then, only the plots are skipped."""
    try:
        import matplotlib
    except ImportError:
        print(f"[avalign] plots skipped: matplotlib is not installed (pip install matplotlib, then rerun with "
              f"--report_only to draw them into {out})")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
