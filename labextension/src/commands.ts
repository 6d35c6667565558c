/** The command ids of the extension (palette, sidebar buttons, other extensions). */
export namespace CommandIDs {
  export const launch = 'hpcserve:launch';
  export const openSidebar = 'hpcserve:open-sidebar';
  export const stop = 'hpcserve:stop';
  export const keepalive = 'hpcserve:keepalive';
  export const relaunch = 'hpcserve:relaunch-session';
  export const extend = 'hpcserve:extend-session';
  export const showLogs = 'hpcserve:show-logs';
  export const copyBaseUrl = 'hpcserve:copy-base-url';
  export const copyModel = 'hpcserve:copy-model';
  export const insertCell = 'hpcserve:insert-serve-cell';
  export const useInJupyterAi = 'hpcserve:use-in-jupyter-ai';
  export const cancelJob = 'hpcserve:cancel-job';
  export const downloadJobResults = 'hpcserve:download-job-results';
}
