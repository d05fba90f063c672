"""Assemble the dashboard YAML files into the zip Superset imports (a build step).

    bundle.py --output dashboards.zip --root deploy/superset/dashboards FILE...

Superset's import format is a zip holding one top folder with metadata.yaml, databases/,
datasets/<database>/, charts/ and dashboards/. The YAML is kept unzipped in the repository so
changes review as text; this step zips it reproducibly (sorted entries, fixed timestamps), so
the same YAML always gives the same bytes. Standard library only.
"""

import argparse
import pathlib
import sys
import zipfile

# The folder name inside the zip; Superset drops it when reading the bundle.
BUNDLE_FOLDER = "datapipelines_dashboards"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=pathlib.Path)
    parser.add_argument("--root", required=True, help="the YAML folder; entry names are relative to it")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    root = args.root.rstrip("/") + "/"
    entries = {}
    for name in args.files:
        if not name.startswith(root) or not name.endswith(".yaml"):
            parser.error("%s is not a .yaml file under %s" % (name, root))
        entries[name[len(root):]] = pathlib.Path(name).read_bytes()
    if "metadata.yaml" not in entries:
        parser.error("%smetadata.yaml is missing: Superset refuses a bundle without it" % root)
    with zipfile.ZipFile(args.output, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative in sorted(entries):
            info = zipfile.ZipInfo("%s/%s" % (BUNDLE_FOLDER, relative), FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, entries[relative])
    return 0


if __name__ == "__main__":
    sys.exit(main())
