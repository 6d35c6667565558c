import { LabIcon } from '@jupyterlab/ui-components';

/** The sidebar tab: a server rack with a spark (a model being served). */
export const sessionsIcon = new LabIcon({
  name: 'hpcserve-jupyter:sessions',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 3h13v5H3zM5 5v1h2V5zM3 10h13v5H3zM5 12v1h2v-1zM3 17h13v4H3zM5 18.5v1h2v-1z"/>
    <path d="M20 2l.9 2.6L23.5 5.5l-2.6.9L20 9l-.9-2.6-2.6-.9 2.6-.9z"/>
  </g>
</svg>`
});

/** A log file. */
export const logIcon = new LabIcon({
  name: 'hpcserve-jupyter:log',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M5 2h10l4 4v16H5zM14 3.5V7h3.5zM7 10v1.5h10V10zM7 13v1.5h10V13zM7 16v1.5h7V16z"/>
  </g>
</svg>`
});

/** Use in Jupyter AI: a chat bubble with a spark. */
export const jupyterAiIcon = new LabIcon({
  name: 'hpcserve-jupyter:jupyter-ai',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 4h13v9H8l-4 4v-4H3zM5 6v5h9V6z"/>
    <path d="M19 10l.8 2.2 2.2.8-2.2.8L19 16l-.8-2.2-2.2-.8 2.2-.8z"/>
  </g>
</svg>`
});

/** Keepalive: a heart beat. */
export const keepaliveIcon = new LabIcon({
  name: 'hpcserve-jupyter:keepalive',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <path class="jp-icon3" style="fill:none" stroke="#616161" stroke-width="2.2"
    stroke-linecap="round" stroke-linejoin="round" d="M2 12h4l2.5-6 4 12 3-8 1.5 2H22"/>
</svg>`
});
