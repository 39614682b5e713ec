// The Alerts page (being built).
import { h } from "../ui.js";

export default {
  title: "Alerts",
  nav: true,
  render(root) {
    root.append(h("p", {}, "Alerts: not built yet"));
  },
};
