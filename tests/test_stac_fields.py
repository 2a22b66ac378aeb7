"""STAC items say what the SAR is: sar/sat/view/processing fields from the real product metadata,
the label extension, ml-aoi split items, and per-scene items for a store with several scenes.

Read back with pystac's own extension classes (SarExtension, SatExtension, ViewExtension,
LabelExtension), from the Capella extended metadata and the Umbra STAC item in tests/data.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pystac
import pytest
import zarr
from pystac.extensions.sar import FrequencyBand, ObservationDirection, SarExtension
from pystac.extensions.sat import OrbitState, SatExtension
from pystac.extensions.view import ViewExtension

from pipeline.layout import DatasetFiles, RegionLayout
from pipeline.publish.index import PublishError
from pipeline.publish.params import PublishParams
from pipeline.publish.scenes import product_fields
from pipeline.publish.stac import ML_AOI_EXTENSION
from pipeline.publish.stage import publish
from test_publish import write_test_store

CAPELLA = "capella/CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358_extended.json"
UMBRA = "umbra/2024-10-26-18-07-08_UMBRA-05.stac.v2.json"


def test_capella_extended_metadata_gives_sar_sat_view_fields(fixtures: Path) -> None:
    meta = json.loads((fixtures / CAPELLA).read_text())
    f = product_fields(meta, {"provider": "capella", "product": "GEO", "polarization": "HH"})
    assert f["sar:frequency_band"] == "X" and f["sar:center_frequency"] == pytest.approx(9.65, abs=1e-3)
    assert f["sar:polarizations"] == ["HH"] and f["sar:instrument_mode"] == "spotlight"
    assert f["sar:observation_direction"] == "left" and f["sar:product_type"] == "GEO"
    assert f["sat:orbit_state"] == "ascending"
    assert f["view:incidence_angle"] == pytest.approx(38.2315, abs=1e-3)
    assert f["view:off_nadir"] == pytest.approx(34.442, abs=1e-3)
    assert f["platform"] == "capella-14" and f["processing:software"] == {"Capella processor": "2.67.5"}


def test_umbra_stac_item_fields_are_taken_as_published(fixtures: Path) -> None:
    item = json.loads((fixtures / UMBRA).read_text())
    f = product_fields(item, {"provider": "umbra", "polarization": "VV"})
    assert f["sar:polarizations"] == ["HH"]  # the product's own field wins over the region file
    assert f["sar:frequency_band"] == "X" and f["sar:instrument_mode"] == "SPOTLIGHT"
    assert f["sat:orbit_state"] == "descending" and f["view:incidence_angle"] == pytest.approx(38.159, abs=1e-3)


def test_without_metadata_only_known_facts_are_written() -> None:
    f = product_fields(None, {"provider": "capella", "product": "GEO", "polarization": "hh"},
                       {"incidence_deg": "35.5"})  # fmt: skip
    assert f == {"sar:frequency_band": "X", "sar:polarizations": ["HH"], "sar:product_type": "GEO",
                 "view:incidence_angle": 35.5, "constellation": "capella"}  # fmt: skip
    assert product_fields(None, {"provider": "someone"}) == {}  # unknown provider: no band guessed


@pytest.fixture(scope="module")
def published(tmp_path_factory, fixtures: Path) -> dict:
    """One single-scene region (Capella metadata in source/) and one two-scene store (``scenes`` attribute)."""
    root = tmp_path_factory.mktemp("scenes")
    one = RegionLayout(root / "data", "paris")
    write_test_store(one.store, "paris", (2.33, 48.85, 2.342, 48.858), 5.0, seed=1, urban="urban",
                     sar_datetime="2024-07-09T04:03:29Z", eo_datetime="2022-05-01")  # fmt: skip
    one.source.dir.mkdir(parents=True)
    one.source.sar_metadata.write_bytes((fixtures / CAPELLA).read_bytes())
    two = RegionLayout(root / "data", "mixed")
    arrays = write_test_store(two.store, "mixed", (-80.05, 32.70, -80.038, 32.708), 5.0, seed=2, urban="rural",
                              sar_datetime="2024-10-26T18:07:09Z", eo_datetime="2019-03-10")  # fmt: skip
    g = zarr.open_group(str(two.store), mode="r+")
    n = len(arrays["id"])
    scene_of = np.where(np.arange(n) % 3 == 0, "UMBRA_A", "CAPELLA_B").astype(object)
    g["sar_item"][:] = scene_of.astype(str)
    g["scene"][:] = scene_of.astype(str)  # the scene (folder) id of each patch, as the patches stage writes it
    umbra = json.loads((fixtures / UMBRA).read_text())
    capella = json.loads((fixtures / CAPELLA).read_text())
    g.attrs["scenes"] = [
        {"id": "UMBRA_A", "sar": {"item_id": "UMBRA_A", "provider": "umbra", "product": "GEC", "polarization": "HH",
                 "datetime": "2024-10-26T18:07:09Z"}, "metadata": umbra,
         "registration": {"applied": True, "flagged": False, "confidence": 0.8, "model": "translation",
                          "shift_m": {"east": 1.0, "north": -2.0}}},
        {"id": "CAPELLA_B", "sar": {"item_id": "CAPELLA_B", "provider": "capella", "product": "GEO", "polarization": "VV"},
         "metadata": {**capella, "collect": {**capella["collect"], "radar": {
             **capella["collect"]["radar"], "transmit_polarization": "V", "receive_polarization": "V"}}},
         "sar_grid_tags": {"calibrated": "true", "radiometry": "sigma0"}},
    ]  # fmt: skip
    stac_dir = root / "stac" / "dataset"
    publish([one.store, two.store], {}, DatasetFiles(root / "data" / "dataset"), stac_dir, PublishParams(),
            sources={"paris": one.source, "mixed": two.source})  # fmt: skip
    col = pystac.Collection.from_file(str(stac_dir / "collection.json"))
    return {"items": {i.id: i for i in col.get_items(recursive=True)}, "scene_of": scene_of, "root": root,
            "stores": [one.store, two.store]}  # fmt: skip


def test_region_item_reads_back_with_pystac_extension_classes(published: dict) -> None:
    item = published["items"]["paris"]
    sar = SarExtension.ext(item)
    assert sar.frequency_band == FrequencyBand.X and [p.value for p in sar.polarizations] == ["HH"]
    assert sar.instrument_mode == "spotlight" and sar.observation_direction == ObservationDirection.LEFT
    assert sar.product_type == "GEO" and sar.center_frequency == pytest.approx(9.65, abs=1e-3)
    assert SatExtension.ext(item).orbit_state == OrbitState.ASCENDING
    assert ViewExtension.ext(item).incidence_angle == pytest.approx(38.2315, abs=1e-3)
    assert "sareo" in item.properties["processing:software"]
    assert "co-registration" in item.properties["processing:lineage"]
    with warnings.catch_warnings():  # pystac deprecates its label helper (it warns on import)
        warnings.simplefilter("ignore", DeprecationWarning)
        from pystac.extensions.label import LabelExtension, LabelType

        label = LabelExtension.ext(item)
        assert label.label_type == LabelType.RASTER
        assert label.label_classes[0].classes == list(range(25))


def test_split_items_carry_ml_aoi_split(published: dict) -> None:
    items = published["items"]
    for split, name in (("train", "train"), ("val", "validate"), ("test", "test")):
        item = items[f"paris_{split}"]
        assert item.properties["ml-aoi:split"] == name and ML_AOI_EXTENSION in item.stac_extensions
        assert SarExtension.ext(item).frequency_band == FrequencyBand.X  # the SAR fields travel along
        link = item.get_single_link("derived_from")
        assert Path(link.get_absolute_href()).name == "paris.json" and Path(link.get_absolute_href()).is_file()
    total = sum(items[f"paris_{s}"].properties["sareo:patches"] for s in ("train", "val", "test"))
    assert total == sum(items["paris"].properties["sareo:patches"][s] for s in ("train", "val", "test"))
    assert "ml-aoi:split" not in items["paris"].properties  # a region item holds every split


def test_each_scene_of_a_multi_scene_store_gets_its_item(published: dict) -> None:
    items = published["items"]
    region = items["mixed"]
    # the region item says only what both scenes share: X band, both polarisations
    assert SarExtension.ext(region).frequency_band == FrequencyBand.X
    assert sorted(p.value for p in SarExtension.ext(region).polarizations) == ["HH", "VV"]
    assert "sat:orbit_state" not in region.properties  # descending (Umbra) vs ascending (Capella)
    umbra, capella = items["mixed_UMBRA_A"], items["mixed_CAPELLA_B"]
    assert SatExtension.ext(umbra).orbit_state == OrbitState.DESCENDING
    assert SatExtension.ext(capella).orbit_state == OrbitState.ASCENDING
    assert [p.value for p in SarExtension.ext(capella).polarizations] == ["VV"]
    assert umbra.properties["sareo:registration"]["shift_m"] == {"east": 1.0, "north": -2.0}
    n = published["scene_of"]
    assert umbra.properties["sareo:patches"] == int((n == "UMBRA_A").sum())
    assert capella.properties["sareo:patches"] == int((n == "CAPELLA_B").sum())
    assert {s["id"]: s["patches"]["total"] for s in region.properties["sareo:scenes"]} == {
        "UMBRA_A": int((n == "UMBRA_A").sum()), "CAPELLA_B": int((n == "CAPELLA_B").sum())}


def test_a_patch_of_an_unlisted_scene_is_an_error(published: dict, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "mixed.zarr"
    shutil.copytree(published["stores"][1], store)
    g = zarr.open_group(str(store), mode="r+")
    ids = g["scene"][:]
    ids[0] = "NOWHERE"
    g["scene"][:] = ids
    with pytest.raises(PublishError, match=r"mixed\.zarr: array 'scene' names scene\(s\) \['NOWHERE'\]"):
        publish([store], {}, DatasetFiles(tmp_path / "out"), tmp_path / "stac", PublishParams())
    assert not (tmp_path / "out").exists() and not (tmp_path / "stac").exists()


def test_scene_fields_come_from_each_scene_fetch_record(fixtures: Path, tmp_path: Path) -> None:
    """A multi-scene store without embedded metadata: each scene's source/scenes/ID/ files fill its fields."""
    lay = RegionLayout(tmp_path / "data", "fetched")
    arrays = write_test_store(lay.store, "fetched", (-80.05, 32.70, -80.038, 32.708), 5.0, seed=3, urban="rural",
                              sar_datetime="2024-10-26T18:07:09Z", eo_datetime="2019-03-10")  # fmt: skip
    g = zarr.open_group(str(lay.store), mode="r+")
    scene_of = np.where(np.arange(len(arrays["id"])) % 2 == 0, "U1", "C1").astype(str)
    g["sar_item"][:] = scene_of
    g["scene"][:] = scene_of
    g.attrs["scenes"] = [{"id": "U1", "item_id": "U1", "provider": "umbra", "product": "GEC", "polarization": "VV"},
                         {"id": "C1", "item_id": "C1", "provider": "capella", "product": "GEO", "polarization": "HH"}]
    umbra = lay.source.scene("U1")
    umbra.dir.mkdir(parents=True)
    view = {"sar:observation_direction": "left", "sat:orbit_state": "descending", "view:incidence_angle": 41.0}
    umbra.provenance.write_text(json.dumps({"sar": {"mode": "SP", "view": view}}))
    capella = lay.source.scene("C1")
    capella.dir.mkdir(parents=True)
    capella.sar_metadata.write_bytes((fixtures / CAPELLA).read_bytes())
    stac_dir = tmp_path / "stac"
    publish([lay.store], {}, DatasetFiles(tmp_path / "data" / "dataset"), stac_dir, PublishParams(),
            sources={"fetched": lay.source})
    items = {i.id: i for i in pystac.Collection.from_file(str(stac_dir / "collection.json")).get_items(recursive=True)}
    u, c = items["fetched_U1"], items["fetched_C1"]
    assert SarExtension.ext(u).instrument_mode == "SP" and SatExtension.ext(u).orbit_state == OrbitState.DESCENDING
    assert SarExtension.ext(u).observation_direction == ObservationDirection.LEFT
    assert ViewExtension.ext(u).incidence_angle == pytest.approx(41.0)
    assert SarExtension.ext(c).instrument_mode == "spotlight" and SatExtension.ext(c).orbit_state == OrbitState.ASCENDING
    card = next((tmp_path / "data" / "dataset").glob("*.md")).read_text()
    assert "| SP | left | 41.00 | descending |" in card and "| spotlight | left |" in card
