"""The offline demo: simulated Capella SAR and XYZ EO tiles from OpenStreetMap (no imports here).

- ``params``: ``DemoParams`` / ``DemoRegion``, the ``demo`` section of params.yaml.
- ``physics``: class map -> SAR sigma0 (texture, double bounce, shadow, speckle, DN) and EO RGB.
- ``rural``: the procedural rural scene, written as OSM XML.
- ``product``: a Capella GEO product: item id, ``*_extended.json``, the HH COG, previews, footprint.
- ``catalog``: the static STAC catalog in Capella Open Data's layout.
- ``stage``: the demo stage, ``build_demo``: every region's product, tiles, truth.json, NOTICE.md.
"""
