// The Dashboards page (being built).
import { h } from "../ui.js";

export default {
  title: "Dashboards",
  nav: true,
  render(root) {
    root.append(h("p", {}, "Dashboards: not built yet"));
  },
};
