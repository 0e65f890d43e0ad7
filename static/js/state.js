// What the app shows now; panels read it and announce changes with ui.emit.
export const state = {
  map: null,
  image: null, // the image on the map (API object)
  detector: null, // the chosen detector (API object)
  version: null, // the chosen version number
  annotations: [], // all the detector's features (every image)
};
