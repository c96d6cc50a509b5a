"""Command line of mmloss: ``python -m mmloss list``.

``list`` prints every registered loss (name, family, mmdet twin, constructor
arguments with defaults, paper)::

    python -m mmloss list                       # terminal listing
    python -m mmloss list --format markdown     # the README table
    python -m mmloss list --family iou          # one family
    python -m mmloss list --update-readme README.md   # rewrite the table
    python -m mmloss list --check-readme README.md    # exit 1 if stale

``swap`` prints a config with every mmdet loss that has an mmloss twin
renamed ``mmloss.<Name>`` (``mmloss.swap``), followed by the table of what
was swapped and what stays mmdet's, as ``#`` comments (so the output is
itself a config)::

    python -m mmloss swap configs/my_retinanet.py
    python -m mmloss swap mmdet::gfl/gfl_r50_fpn_1x_coco.py -o gfl_mmloss.py
"""
import argparse
import sys

from . import catalogue as cat


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m mmloss',
        description='mmloss: object-detection losses for MMDetection.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    commands.required = True
    lister = commands.add_parser(
        'list', help='print every registered loss',
        description='Print every registered loss: name, family, mmdet twin, '
        'constructor arguments with defaults, paper.')
    lister.add_argument(
        '--format', choices=sorted(cat.RENDERERS), default='text',
        help='output format (default: text)')
    lister.add_argument(
        '--family', action='append', default=None,
        help='only this family (module under mmloss.losses); repeatable')
    readme = lister.add_mutually_exclusive_group()
    readme.add_argument(
        '--update-readme', metavar='README',
        help='rewrite the markdown table between the catalogue markers '
        'of this file (nothing else in it changes)')
    readme.add_argument(
        '--check-readme', metavar='README',
        help='exit with status 1 if the table in this file is not current')
    swapper = commands.add_parser(
        'swap', help="swap a config's mmdet losses for their mmloss twins",
        description='Print the config with every mmdet loss that has an '
        'mmloss twin renamed mmloss.<Name>, then a table of what was swapped '
        "and what stays mmdet's (as # comments).")
    swapper.add_argument(
        'config', help='config file, or a package config such as '
        'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    swapper.add_argument(
        '-o', '--out', metavar='OUT',
        help='write the swapped config here (and print only the table)')
    return parser


def _swap(args) -> int:
    from . import swap
    new_cfg, rows = swap.swap_losses(swap.load_config(args.config))
    table = ''.join(f'# {line}'.rstrip() + '\n'
                    for line in swap.format_table(rows).splitlines())
    if args.out:
        new_cfg.dump(args.out)
        sys.stdout.write(table)
        print(f'# written to {args.out}')
    else:
        sys.stdout.write(new_cfg.pretty_text.rstrip('\n') + '\n\n' + table)
    return 0


def _list(args, parser) -> int:
    entries = cat.catalogue()
    if args.family:
        known = sorted({e.family for e in entries})
        unknown = sorted(set(args.family) - set(known))
        if unknown:
            parser.error(f'unknown family {", ".join(unknown)}; '
                         f'families with losses: {", ".join(known)}')
        entries = [e for e in entries if e.family in args.family]
    if args.update_readme or args.check_readme:
        if args.family:
            parser.error('--update-readme/--check-readme use the whole '
                         'catalogue; drop --family')
        table = cat.render_markdown(entries)
        path = args.update_readme or args.check_readme
        with open(path, encoding='utf-8') as f:
            text = f.read()
        try:
            new_text = cat.replace_readme_block(text, table)
        except ValueError as exc:
            parser.error(f'{path}: {exc}')
        if args.check_readme:
            if new_text != text:
                print(f'{path}: the loss table is stale; run '
                      f'`python -m mmloss list --update-readme {path}`',
                      file=sys.stderr)
                return 1
            print(f'{path}: the loss table is current')
            return 0
        if new_text != text:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(new_text)
        print(f'{path}: loss table of {len(entries)} losses written')
        return 0
    sys.stdout.write(cat.RENDERERS[args.format](entries))
    return 0


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == 'list':
        return _list(args, parser)
    if args.command == 'swap':
        return _swap(args)
    parser.error(f'unknown command {args.command!r}')  # pragma: no cover


if __name__ == '__main__':
    sys.exit(main())
