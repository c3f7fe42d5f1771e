// pixseg view: the slide and its labels in OpenSeadragon, a legend with a toggle per label,
// an opacity slider, and the label under the pointer. Everything comes from this page's server.
// Hidden labels are left out by the server: the label tiles are requested as
// labels.dzi?hidden=1,3, whose tiles carry the same query, so each visible set has its own tiles.
"use strict";

(function () {
  const state = { hidden: new Set(), opacity: 0.5, pending: 0, legend: new Map() };
  const numbers = new Intl.NumberFormat("en-US");
  const areas = new Intl.NumberFormat("en-US", { maximumSignificantDigits: 4 });

  function labelsUrl() {
    const hidden = [...state.hidden].sort((a, b) => a - b);
    return hidden.length ? `labels.dzi?hidden=${hidden.join(",")}` : "labels.dzi";
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function buildLegend(info, onToggle) {
    const body = document.querySelector("#legend tbody");
    const withArea = info.pixel_size_um !== null;
    if (!withArea) document.getElementById("area-header").remove();
    for (const entry of info.labels) {
      const row = document.createElement("tr");
      row.dataset.label = entry.label;
      const toggle = document.createElement("input");
      toggle.type = "checkbox";
      toggle.checked = true;
      toggle.setAttribute("aria-label", `show ${entry.name}`);
      toggle.addEventListener("change", () => {
        if (toggle.checked) state.hidden.delete(entry.label);
        else state.hidden.add(entry.label);
        row.classList.toggle("hidden-label", !toggle.checked);
        onToggle();
      });
      const first = document.createElement("td");
      first.append(toggle);
      const name = cell("", "name");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = entry.colour;
      name.append(swatch, entry.name);
      row.append(
        first,
        name,
        cell(entry.pixels === null ? "–" : numbers.format(entry.pixels), "number pixels"),
        cell(entry.fraction === null ? "–" : (100 * entry.fraction).toFixed(1), "number fraction"),
      );
      if (withArea) row.append(cell(entry.area_um2 === null ? "–" : areas.format(entry.area_um2), "number area"));
      body.append(row);
      state.legend.set(entry.label, { row, name: entry.name });
    }
    if (info.masked_pixels > 0) {  // label 0: transparent in the overlay, listed for its count
      const row = document.createElement("tr");
      row.className = "masked-row";
      const name = cell("", "name");
      const swatch = document.createElement("span");
      swatch.className = "swatch masked";
      name.append(swatch, "masked");
      row.append(cell(""), name, cell(numbers.format(info.masked_pixels), "number pixels"), cell("–", "number fraction"));
      if (withArea) row.append(cell("–", "number area"));
      body.append(row);
    }
  }

  function showLabels(viewer) {
    state.pending += 1;
    const done = () => { state.pending -= 1; };
    viewer.addTiledImage({
      tileSource: labelsUrl(),
      index: 1,
      replace: viewer.world.getItemCount() > 1,
      opacity: state.opacity,
      success: done,
      error: (event) => { done(); console.error("pixseg: cannot load the labels", event.message); },
    });
  }

  function trackPointer(viewer) {
    const readout = document.getElementById("pointer");
    let latest = null;
    let busy = false;
    let current = null;

    function highlight(label) {
      if (current !== null) current.row.classList.remove("current");
      current = state.legend.get(label) || null;
      if (current !== null) current.row.classList.add("current");
    }

    async function lookUp() {
      busy = true;
      while (latest !== null) {
        const { x, y } = latest;
        latest = null;
        const answer = await (await fetch(`label?x=${x}&y=${y}`)).json();
        if (answer.label === null) {
          readout.textContent = "pointer: outside the slide";
        } else {
          const entry = state.legend.get(answer.label);
          const named = entry && entry.name !== `label ${answer.label}` ? ` (${entry.name})` : "";
          const what = entry ? `label ${answer.label}${named}` : "no label (masked)";
          readout.textContent = `x ${numbers.format(x)}, y ${numbers.format(y)}: ${what}`;
        }
        highlight(answer.label);
      }
      busy = false;
    }

    new OpenSeadragon.MouseTracker({
      element: viewer.canvas,
      moveHandler: (event) => {
        const slide = viewer.world.getItemAt(0);
        if (!slide) return;
        const point = slide.viewerElementToImageCoordinates(event.position);
        latest = { x: Math.floor(point.x), y: Math.floor(point.y) };
        if (!busy) lookUp();
      },
    });
  }

  async function start() {
    const info = await (await fetch("info.json")).json();
    document.title = `${info.name} – pixseg view`;
    document.getElementById("title").textContent = info.name;
    const viewer = OpenSeadragon({
      id: "viewer",
      prefixUrl: "openseadragon/images/",
      drawer: "canvas",
      tileSources: "slide.dzi",
      showNavigator: true,
      navigatorPosition: "BOTTOM_LEFT",
      maxZoomPixelRatio: 4,
      visibilityRatio: 0.5,
    });
    buildLegend(info, () => showLabels(viewer));
    viewer.addOnceHandler("open", () => showLabels(viewer));

    const slider = document.getElementById("opacity");
    const shown = document.getElementById("opacity-value");
    state.opacity = Number(slider.value);
    slider.addEventListener("input", () => {
      state.opacity = Number(slider.value);
      shown.textContent = `${Math.round(100 * state.opacity)}%`;
      const labels = viewer.world.getItemAt(1);
      if (labels) labels.setOpacity(state.opacity);
    });
    trackPointer(viewer);

    // for tests and the browser console
    window.pixseg = {
      viewer,
      tilesLoaded() {
        const count = viewer.world.getItemCount();
        if (state.pending || count < 2) return false;
        for (let i = 0; i < count; i += 1) {
          if (!viewer.world.getItemAt(i).getFullyLoaded()) return false;
        }
        return true;
      },
      imageToPage(x, y) {
        const point = viewer.world.getItemAt(0).imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
        const box = viewer.element.getBoundingClientRect();
        return { x: box.left + point.x, y: box.top + point.y };
      },
    };
  }

  start();
})();
